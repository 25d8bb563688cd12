"""Pretrain the DAMSM text and image encoders (AttnGAN's schedule).

    python pretrain_DAMSM.py --cfg cfg/DAMSM/bird.yml [KEY=VALUE ...]
    python pretrain_DAMSM.py --cfg cfg/DAMSM/bird.yml RESTORE=True          # continue the last run
    python pretrain_DAMSM.py --cfg cfg/DAMSM/bird.yml TRAIN.NET_E=.../text_encoder200.pth

Snapshots text_encoder<epoch>.pth / image_encoder<epoch>.pth go to the run's models/ folder;
point main.py's TEXT.DAMSM_NAME at the text encoder.
"""
import sys

from miscc.cli import damsm_main

if __name__ == '__main__':
    sys.exit(damsm_main())
