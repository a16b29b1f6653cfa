"""Fleet rollout over the plant's own MQTT broker (docs/FLEET.md): a signed release goes to a group's
devices in waves, each device's agent installs it with deploy's install (health check included) and
reports, and the rollout halts by itself when a wave goes wrong.

Device side: never imports torch. Modules:
  topics    the topic tree, namespaced per group
  broker    broker URI, authentication and TLS options, and one reconnecting paho client (Link)
  messages  signed release and command messages (minisign signatures with the fleet key)
  fetch     the package from file://, http(s):// or chunks over MQTT, size- and sha256-checked
  agent     the device agent: release -> fetch -> slots.install -> retained state report
  rollout   waves, per-wave verdicts, halt, rollback on halt, the JSON report
  status    every device's retained state in one table
  unit      the agent's systemd unit (`edgesdk service --agent`)
The commands (`edgesdk agent | rollout | fleet status | fleet forget`) are edgesdk/cli/fleet.py."""
