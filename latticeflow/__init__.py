"""latticeflow: lattice field theory ensembles with HMC, equivariant normalizing flows and
path-gradient training, written to HDF5 and analysed with the Gamma method."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("latticeflow")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
