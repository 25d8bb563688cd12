"""main_finetune: not implemented yet."""
import sys

if __name__ == '__main__':
    sys.exit('main_finetune.py is not implemented yet.')
