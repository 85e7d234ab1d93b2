import sys

from sgm.cli import main

sys.exit(main())
