from benchmarks.throughput.run import main

main()
