"""pyradiomics parameter files (YAML) and IBSI comparison data; a package so that setuptools ships them."""
