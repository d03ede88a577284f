from pruning.cli import main

main()
