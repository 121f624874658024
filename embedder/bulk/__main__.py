import sys

from embedder.bulk.cli import main

sys.exit(main())
