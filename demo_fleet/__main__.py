from demo_fleet.server import main

main()
