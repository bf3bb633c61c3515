/* What sgpu's SPANK plugin needs from the installed Slurm headers (libslurm-dev). */
#include <slurm/spank.h>
#include <slurm/slurm_version.h>
#include <slurm/slurm.h>
