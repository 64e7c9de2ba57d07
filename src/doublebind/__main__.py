from doublebind.cli import main

main()
