from splat3d_cli.main import main

main()
