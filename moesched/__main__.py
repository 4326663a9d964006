import sys

from moesched.cli import main

sys.exit(main())
