"""The emulated Raspberry Pi on the host: running the deploy side under qemu
(:mod:`.emulate`), counting executed instructions (:mod:`.icount`) and modeling their
Cortex-A72 cycles (:mod:`.cycles`).  ``setup_pi_emulator.sh`` installs it."""
