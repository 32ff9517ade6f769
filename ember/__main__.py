try:
    from ember.cli import main
except KeyboardInterrupt:  # Ctrl-C while still importing: exit as `main` would, quietly
    raise SystemExit(130) from None

raise SystemExit(main())
