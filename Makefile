# sgpu: build, install and Debian packages for a real cluster (docs/install.md, sections 1-2).
#
#   make build                      cargo build --release --locked (PROFILE=debug: a debug build)
#   make install-node               GPU nodes: prolog, epilog, healthd, SPANK plugin, sgpu, unit
#   make install-head               the head node: sgpu-acctd, sgpu, unit
#   make install                    both
#   make uninstall                  removes what install put there; keeps sgpu.toml and data
#   make deb                        sgpu-common, sgpu-node (+slurmX.Y) and sgpu-head .deb files in DEB_OUT
#
# Variables: PREFIX (/usr/local), DESTDIR (staging root, empty: this machine), PROFILE
# (release|debug), BUILD_DIR (where the built files are: target/<PROFILE>), SYSCONFDIR (/etc),
# UNITDIR (<SYSCONFDIR>/systemd/system), SLURM_PLUGIN_DIR (<PREFIX>/lib/slurm). State and
# spool are /var/lib/sgpu and /var/spool/sgpu (sgpu's defaults; set state_dir/spool_dir
# in sgpu.toml to move them). For `deb`: DEB_OUT (target/deb), DEB_COMPRESS (xz|gzip|zstd|none),
# DEB_STRIP (the strip command; empty: keep symbols), DEB_MAINTAINER.
#
# Nothing here builds as a side effect: install and deb use what `make build` left (run
# `make build` as a user and `make install` as root). No target runs during `cargo test`.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PROFILE ?= release
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= $(SYSCONFDIR)/systemd/system
SBINDIR ?= $(PREFIX)/sbin
BINDIR ?= $(PREFIX)/bin
SLURM_PLUGIN_DIR ?= $(PREFIX)/lib/slurm
CARGO ?= cargo
CARGO_TARGET_DIR ?= target
BUILD_DIR ?= $(CARGO_TARGET_DIR)/$(PROFILE)
INSTALL ?= install

VERSION := $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
DEB_OUT ?= $(CARGO_TARGET_DIR)/deb
DEB_COMPRESS ?= xz
DEB_STRIP ?= strip --strip-unneeded
DEB_MAINTAINER ?= sgpu local build <root@localhost>

CARGO_PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,$(if $(filter debug,$(PROFILE)),,--profile $(PROFILE)))
PACKAGES := -p sgpu-prolog-epilog -p sgpu-healthd -p sgpu-spank -p sgpu-accounting -p sgpu-cli \
	-p nvml-sim

NODE_SBIN := sgpu-prolog sgpu-epilog sgpu-healthd
HEAD_SBIN := sgpu-acctd
PLUGIN := libspank_sgpu.so
# the simulated NVML library `sgpu check --capture` judges nvidia-smi captures through; sgpu
# looks for it in ../lib/sgpu/ beside its own directory (never loaded by the gates or healthd)
SIM_LIB := libnvml_sim.so
SGPU_LIBDIR = $(PREFIX)/lib/sgpu

# installs unit $(1) as $(2), its ExecStart pointing at this installation's sbin
define install_unit
	$(INSTALL) -d -m 0755 '$(DESTDIR)$(UNITDIR)'
	sed -e 's|^ExecStart=/usr/local/sbin/|ExecStart=$(SBINDIR)/|' '$(1)' > '$(DESTDIR)$(UNITDIR)/$(2).tmp'
	grep -q '^ExecStart=$(SBINDIR)/' '$(DESTDIR)$(UNITDIR)/$(2).tmp' || \
	    { echo "$(1): no ExecStart=/usr/local/sbin/... line to point at $(SBINDIR)" >&2; exit 1; }
	chmod 0644 '$(DESTDIR)$(UNITDIR)/$(2).tmp'
	mv '$(DESTDIR)$(UNITDIR)/$(2).tmp' '$(DESTDIR)$(UNITDIR)/$(2)'
endef

# installs file $(2) as $(3) with mode $(1): copied beside it, then renamed over it, so a
# running daemon, a prolog slurmd starts meanwhile or a plugin slurmstepd has mapped never
# sees a half-written file
install_file = $(INSTALL) -m $(1) '$(2)' '$(3).new'; mv -f '$(3).new' '$(3)';

# fails with what to do when a built file $(1) is missing
define need_built
	@for f in $(1); do \
	  [ -f '$(BUILD_DIR)'/$$f ] || { echo "$(BUILD_DIR)/$$f is missing: run 'make build PROFILE=$(PROFILE)' first (or set BUILD_DIR)" >&2; exit 1; }; \
	done
endef

.PHONY: help build install install-node install-head install-common install-node-only \
	install-head-only uninstall deb

help:
	@sed -n '3,9p' Makefile | sed 's/^# *//'

build:
	$(CARGO) build --locked $(CARGO_PROFILE_FLAG) $(PACKAGES)

install: install-node install-head

install-node: install-common install-node-only
	@echo "slurm.conf:      Prolog=$(SBINDIR)/sgpu-prolog"
	@echo "                 Epilog=$(SBINDIR)/sgpu-epilog"
	@echo "plugstack.conf:  optional $(SLURM_PLUGIN_DIR)/spank_sgpu.so config=$(SYSCONFDIR)/sgpu/sgpu.toml"
	@[ -n '$(DESTDIR)' ] || echo "installed; enable the daemon yourself: systemctl daemon-reload && systemctl enable --now sgpu-healthd"

install-head: install-common install-head-only
	@[ -n '$(DESTDIR)' ] || echo "installed; enable the daemon yourself: systemctl daemon-reload && systemctl enable --now sgpu-acctd"

# the sgpu command and the configuration file (never overwritten)
install-common:
	$(call need_built,sgpu $(SIM_LIB))
	$(INSTALL) -d -m 0755 '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(SYSCONFDIR)/sgpu' '$(DESTDIR)$(SGPU_LIBDIR)'
	$(call install_file,0755,$(BUILD_DIR)/sgpu,$(DESTDIR)$(BINDIR)/sgpu)
	$(call install_file,0644,$(BUILD_DIR)/$(SIM_LIB),$(DESTDIR)$(SGPU_LIBDIR)/$(SIM_LIB))
	@if [ -e '$(DESTDIR)$(SYSCONFDIR)/sgpu/sgpu.toml' ]; then \
	  echo "kept the existing $(DESTDIR)$(SYSCONFDIR)/sgpu/sgpu.toml (the example is packaging/sgpu.toml)"; \
	else \
	  echo "$(INSTALL) -m 0644 packaging/sgpu.toml $(DESTDIR)$(SYSCONFDIR)/sgpu/sgpu.toml"; \
	  $(INSTALL) -m 0644 packaging/sgpu.toml '$(DESTDIR)$(SYSCONFDIR)/sgpu/sgpu.toml'; \
	fi

install-node-only:
	$(call need_built,$(NODE_SBIN) $(PLUGIN))
	$(INSTALL) -d -m 0755 '$(DESTDIR)$(SBINDIR)' '$(DESTDIR)$(SLURM_PLUGIN_DIR)'
	$(foreach b,$(NODE_SBIN),$(call install_file,0755,$(BUILD_DIR)/$(b),$(DESTDIR)$(SBINDIR)/$(b)))
	$(call install_file,0644,$(BUILD_DIR)/$(PLUGIN),$(DESTDIR)$(SLURM_PLUGIN_DIR)/spank_sgpu.so)
	$(call install_unit,healthd/sgpu-healthd.service,sgpu-healthd.service)
	$(INSTALL) -d -m 0700 '$(DESTDIR)/var/lib/sgpu' '$(DESTDIR)/var/spool/sgpu'

install-head-only:
	$(call need_built,$(HEAD_SBIN))
	$(INSTALL) -d -m 0755 '$(DESTDIR)$(SBINDIR)'
	$(foreach b,$(HEAD_SBIN),$(call install_file,0755,$(BUILD_DIR)/$(b),$(DESTDIR)$(SBINDIR)/$(b)))
	$(call install_unit,accounting/sgpu-acctd.service,sgpu-acctd.service)
	$(INSTALL) -d -m 0700 '$(DESTDIR)/var/lib/sgpu'

uninstall:
	rm -f $(addprefix '$(DESTDIR)$(SBINDIR)'/,$(NODE_SBIN) $(HEAD_SBIN)) '$(DESTDIR)$(BINDIR)/sgpu' \
	  '$(DESTDIR)$(SGPU_LIBDIR)/$(SIM_LIB)' \
	  '$(DESTDIR)$(SLURM_PLUGIN_DIR)/spank_sgpu.so' \
	  '$(DESTDIR)$(UNITDIR)/sgpu-healthd.service' '$(DESTDIR)$(UNITDIR)/sgpu-acctd.service'
	@echo "kept $(SYSCONFDIR)/sgpu, /var/lib/sgpu (accounting data) and /var/spool/sgpu (records not yet forwarded)"

# Debian packages: staged with PREFIX=/usr and units in /lib/systemd/system. sgpu-node
# depends on the slurmd major.minor its SPANK plugin was built for (read from the plugin's
# plugin_version by packaging/plugin-slurm-version): slurmstepd refuses a plugin of another
# Slurm release, so an apt upgrade of slurmd to the next release must wait for a rebuilt
# sgpu-node instead of silently dropping the plugin. sgpu-node's version names that release
# too (0.1.0+slurm22.05, in the file name as well), so builds for two releases never mix.
DEB_STAGE = $(DEB_OUT)/stage
DEB_MAKE = $(MAKE) --no-print-directory PREFIX=/usr SYSCONFDIR=/etc \
	UNITDIR=/lib/systemd/system SLURM_PLUGIN_DIR=/usr/lib/slurm BUILD_DIR='$(abspath $(BUILD_DIR))'

deb:
	$(call need_built,sgpu $(SIM_LIB) $(NODE_SBIN) $(HEAD_SBIN) $(PLUGIN))
	@[ -n '$(VERSION)' ] || { echo "no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
	rm -rf '$(DEB_STAGE)'
	$(INSTALL) -d '$(DEB_OUT)'
	$(DEB_MAKE) DESTDIR='$(abspath $(DEB_STAGE))/sgpu-common' install-common
	$(DEB_MAKE) DESTDIR='$(abspath $(DEB_STAGE))/sgpu-node' install-node-only
	$(DEB_MAKE) DESTDIR='$(abspath $(DEB_STAGE))/sgpu-head' install-head-only
	@read -r slurm slurm_next < <(packaging/plugin-slurm-version '$(BUILD_DIR)/$(PLUGIN)'); \
	libc=$$(dpkg-query -W -f='$${Version}' libc6 | sed 's/-.*//'); \
	arch=$$(dpkg --print-architecture); \
	echo "sgpu $(VERSION) ($$arch): SPANK plugin built for Slurm $$slurm, libc6 >= $$libc"; \
	for p in sgpu-common sgpu-node sgpu-head; do \
	  root='$(DEB_STAGE)'/$$p; \
	  pkgver='$(VERSION)'; [ $$p != sgpu-node ] || pkgver="$$pkgver+slurm$$slurm"; \
	  rm -rf "$$root/var"; \
	  if [ -n '$(DEB_STRIP)' ]; then \
	    find "$$root/usr" -type f \( -perm -0100 -o -name '*.so' \) -exec $(DEB_STRIP) {} +; \
	  fi; \
	  $(INSTALL) -d -m 0755 "$$root/DEBIAN"; \
	  size=$$(du -sk --exclude=DEBIAN "$$root" | cut -f1); \
	  sed -e "s|@PKG_VERSION@|$$pkgver|g" \
	      -e "s|@VERSION@|$(VERSION)|g" -e "s|@ARCH@|$$arch|g" -e "s|@SLURM@|$$slurm|g" \
	      -e "s|@SLURM_NEXT@|$$slurm_next|g" -e "s|@LIBC@|$$libc|g" -e "s|@SIZE@|$$size|g" \
	      -e "s|@MAINTAINER@|$(DEB_MAINTAINER)|g" \
	      packaging/debian-$${p#sgpu-}/control > "$$root/DEBIAN/control"; \
	  for s in conffiles; do \
	    [ ! -f packaging/debian-$${p#sgpu-}/$$s ] || $(INSTALL) -m 0644 packaging/debian-$${p#sgpu-}/$$s "$$root/DEBIAN/"; \
	  done; \
	  for s in postinst prerm postrm; do \
	    [ ! -f packaging/debian-$${p#sgpu-}/$$s ] || $(INSTALL) -m 0755 packaging/debian-$${p#sgpu-}/$$s "$$root/DEBIAN/"; \
	  done; \
	  dpkg-deb --build --root-owner-group -Z'$(DEB_COMPRESS)' "$$root" \
	    '$(DEB_OUT)'/$${p}_$${pkgver}_$${arch}.deb; \
	done
	rm -rf '$(DEB_STAGE)'
