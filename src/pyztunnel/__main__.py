from pyztunnel.cli import main

main()
