import sys

from gqa_sweep.bench.cli import main

sys.exit(main())
