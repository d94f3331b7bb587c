"""One module per `imgclf` command (or family): each has `add_parser(subparsers, parents)`, which
declares the command's own flags and sets `func`, the function that runs it."""
