import sys

from dwsbridge.cli import main

sys.exit(main())
