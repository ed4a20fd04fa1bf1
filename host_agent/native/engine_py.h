/* Registers netagg.host_agent._native.Engine (engine_py.c) on the extension module. */
#ifndef NETAGG_ENGINE_PY_H
#define NETAGG_ENGINE_PY_H

#include <Python.h>

int na_add_engine_type(PyObject *module);

#endif
