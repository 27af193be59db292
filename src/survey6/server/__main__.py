from survey6.server.cli import main

main()
