"""fedsim: privacy-preserving federated learning on Flower, Ray, Opacus and TenSEAL.

The modules directly in this package (`errors`, `config`, `protocol`) are the shared
foundation every layer may import; the command line lives in `fedsim.cli` and is
imported by nothing.
"""

__version__ = "0.1.0"
