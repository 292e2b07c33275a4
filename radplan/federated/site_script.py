"""The script FLARE runs at each site (its ScriptRunner needs a file): see :mod:`radplan.federated.flare_client`."""

from radplan.federated.flare_client import main

if __name__ == "__main__":
    main()
