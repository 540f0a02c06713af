from maintctl.cli import main

main()
