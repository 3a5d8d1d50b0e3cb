"""The single source of the training options' defaults, and how a TOML file and flags override them."""
