from tokbench.cli import main

main()
