import sys

from jafr_kernels.cli import main

sys.exit(main())
