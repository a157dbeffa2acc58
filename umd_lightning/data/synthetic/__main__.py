from umd_lightning.data.synthetic.cli import main

main()
