"""What each verb does, between the command line (toolchain/cli.py) and the core: one module per
verb group (train/finetune/build, quantize, parity, clean, and the runtime verbs)."""
