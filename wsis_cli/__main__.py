from wsis_cli.cli.app import main

main()
