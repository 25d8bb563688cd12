"""main: not implemented yet."""
import sys

if __name__ == '__main__':
    sys.exit('main.py is not implemented yet.')
