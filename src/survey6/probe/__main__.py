from survey6.probe.cli import main

main()
