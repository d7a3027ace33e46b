"""Language ecosystems (cargo today; npm and pip later): what the fetch phase and the
runner need to know about one package manager, behind one small protocol."""
