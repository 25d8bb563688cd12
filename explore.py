"""Explore trained generators in a local web page: ``python explore.py [SOURCE ...] [--port N]``."""
import sys

from miscc.explorer import main

if __name__ == '__main__':
    sys.exit(main())
