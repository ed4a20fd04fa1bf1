"""netagg.host_agent"""
