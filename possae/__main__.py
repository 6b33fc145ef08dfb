from possae.cli import main

main()
