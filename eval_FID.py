"""eval_FID: not implemented yet."""
import sys

if __name__ == '__main__':
    sys.exit('eval_FID.py is not implemented yet.')
