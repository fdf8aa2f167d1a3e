import sys

from mmadapt.cli.main import main

sys.exit(main())
