"""``python3 -m algorithms train``: what the image's ``train`` program runs."""

import sys

from algorithms import main

sys.exit(main(sys.argv[1:]))
