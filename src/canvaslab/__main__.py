from canvaslab.cli.main import main

main()
