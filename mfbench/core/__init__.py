"""The thing measured: the Memory Layer's reference lookup, the models, and the provider registry."""
