"""Deployment to the device: signed packages, slots with an atomic `current` pointer, a health check
before the switch, rollback, staging into a target root filesystem, and the service (docs/DEPLOY.md).

Device side: never imports torch. Modules:
  keys      Ed25519 keys and detached signatures in minisign's formats
  manifest  the package manifest (package.json) and version ordering
  archive   reading a package archive safely (member types, names, sizes, counts)
  package   pack, verify, inspect
  health    the health check a slot passes before it becomes current
  layout    a deployment root on disk: current/previous pointers, lock, slot checks, gc, history
  slots     install / rollback / status: the install state machine
  stage     the same install into a target root filesystem that is never executed
  service   the hardened systemd unit that runs `edgesdk run` on ROOT/current
  commands  the command line of all of the above"""
