"""pretrain_DAMSM: not implemented yet."""
import sys

if __name__ == '__main__':
    sys.exit('pretrain_DAMSM.py is not implemented yet.')
