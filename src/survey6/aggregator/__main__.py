from survey6.aggregator.cli import main

main()
