"""`python -m emorl_cli` (and `accelerate launch -m emorl_cli`) runs the same CLI as `emorl`."""

from emorl_cli.cli.app import main

if __name__ == "__main__":
    main()
