"""eval_IS: not implemented yet."""
import sys

if __name__ == '__main__':
    sys.exit('eval_IS.py is not implemented yet.')
