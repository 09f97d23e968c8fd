import sys

from esamp_sgl.cli import main

sys.exit(main())
