from harness.estimate.cli import main

main()
