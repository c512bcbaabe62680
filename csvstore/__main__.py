"""``python -m csvstore``: see csvstore/commandline.py."""

from csvstore.commandline import main

if __name__ == "__main__":
    main()
