// COIN-OR CBC's C interface (EPL-2.0): LP and MILP for the policy search and cluster planner.
#include <Cbc_C_Interface.h>
