from huabu.cli import main

main()
