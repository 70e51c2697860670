"""The recipes behind the `hf-gnft` command: one module per subcommand, each with a `main(argv=None)`."""
