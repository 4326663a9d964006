"""Package list for setuptools (metadata is in pyproject.toml).

The shipped profiles stay in the repository's top-level ``profiles/`` folder and install as
the package data of ``moesched.profiles``, so ``moesched.profile.shipped_profiles_dir`` finds
them in a wheel install as well as in a source checkout.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["moesched", "moesched.*", "executor", "executor.*"]) + ["moesched.profiles"],
    package_dir={"moesched.profiles": "profiles"},
)
